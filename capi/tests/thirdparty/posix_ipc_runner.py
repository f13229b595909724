"""Run the message-queue part of posix_ipc's own test suite.

usage: python posix_ipc_runner.py SDIST_DIR, with the interpreter of a venv
into which posix_ipc was installed; SDIST_DIR is the unpacked sdist, which
holds tests/.  Prints each
test, then a line "RESULT passed=N failed=N skipped=N", and exits non-zero if
anything failed.
"""
import os
import sys
import unittest

import posix_ipc

# The message-queue tests, plus the module-level tests (constants such as
# QUEUE_PRIORITY_MAX, unlink_message_queue()).  The semaphore and shared
# memory tests do not touch mq_* and are left out.
MODULES = ["tests.test_message_queues", "tests.test_module"]


def main():
    sys.path.insert(0, os.path.abspath(sys.argv[1]))
    print("posix_ipc %s from %s" % (posix_ipc.VERSION, posix_ipc.__file__))
    print("MESSAGE_QUEUES_SUPPORTED=%s QUEUE_MESSAGES_MAX_DEFAULT=%s "
          "QUEUE_MESSAGE_SIZE_MAX_DEFAULT=%s QUEUE_PRIORITY_MAX=%s" % (
              posix_ipc.MESSAGE_QUEUES_SUPPORTED,
              getattr(posix_ipc, "QUEUE_MESSAGES_MAX_DEFAULT", None),
              getattr(posix_ipc, "QUEUE_MESSAGE_SIZE_MAX_DEFAULT", None),
              getattr(posix_ipc, "QUEUE_PRIORITY_MAX", None)))
    print("LD_PRELOAD=%s" % os.environ.get("LD_PRELOAD", ""))
    sys.stdout.flush()

    suite = unittest.defaultTestLoader.loadTestsFromNames(MODULES)
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)

    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    passed = result.testsRun - failed - skipped
    print("RESULT passed=%d failed=%d skipped=%d" % (passed, failed, skipped))
    sys.stdout.flush()
    return 0 if failed == 0 and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
