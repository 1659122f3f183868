"""Integration tests: real servers over real sockets (stand-ins and emulators)."""
