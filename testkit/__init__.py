"""Test support shared by test/ and bench/: fakes of the ports, the service as a process or a
thread, a temporary PostgreSQL database, runtime factories, and the helper scripts that tests run
as subprocesses (``python -m testkit.<script>`` from the project root). Not in the server wheel."""
