"""The service's entry points: CLI, HTTP and gRPC servers, wiring and settings.

grpc's C core installs fork handlers (pthread_atfork) that stop its pollers before a fork and
restart them in the child. This process forks only to exec (subprocess; QEMU is started with
fork, not vfork, because its child drops to another user), and a poller restarted in that child
between fork and exec meets the descriptors subprocess closes there: a CI run saw the child log
"Epoll1Poller ... epoll_wait error: Bad file descriptor" into QEMU's stderr and the environment
build VM never report. Fork support only serves a child that goes on using grpc without exec,
which never happens here, so it is off unless the operator sets GRPC_ENABLE_FORK_SUPPORT. It
must be set before grpc is first imported: this package's init runs before any of its modules.
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
