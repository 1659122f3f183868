from tests.security.test_fuzz_openapi import fuzz, fuzz_hostile
def test_big(harness, capsys):
    fuzz(harness, max_examples=8000, derandomize=False, capsys=capsys, label="big").assert_sound(8000)
def test_big_hostile(harness, capsys):
    fuzz_hostile(harness, max_examples=3000, derandomize=False, capsys=capsys, label="bighostile").assert_sound(3000)
