"""Ctrl-C as the Ctrl-C tests need it, however the suite was started: a shell that starts a command in the background
(`cmd &`, nohup) hands it SIGINT ignored, and Python then never raises KeyboardInterrupt, in the suite or in its
children."""

import signal

import pytest


def default_sigint_in_child():
    """``preexec_fn`` for subprocess.Popen: the child starts with SIGINT's default disposition, so Python installs
    its KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def sigint_raises_keyboard_interrupt():
    """Python's KeyboardInterrupt handler on SIGINT for the test, the previous handler afterwards."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)
