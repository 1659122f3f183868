from tests.support.fixtures import *
