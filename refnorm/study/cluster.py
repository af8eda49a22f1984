"""`refnorm study --scheduler ADDRESS`: the study's runs on a Dask cluster (distributed).

Each run is one task, run_one(spec, cfg), submitted with retries=1; results come back as they
finish and the driver records each one (runlog.py) before it takes the next. A run depends only
on its spec and the configuration (experiment.rng_for), so the cluster computes the numbers a
local run does. Faults:

    no scheduler at ADDRESS    ConnectionError naming ADDRESS, after CONNECT_TIMEOUT seconds
    a worker dies in a run     Dask runs the task again on another worker (up to its
                               distributed.scheduler.allowed-failures, 3 by default)
    a run raises               Dask runs it once more (retries=1); if it fails again it is
                               recorded as failed, with the error, and the study goes on

Every worker needs refnorm (with the study extra) importable, at the version of the driver.
"""
CONNECT_TIMEOUT = 5        # seconds before an address with no scheduler behind it is an error


def connect(address, timeout=CONNECT_TIMEOUT):
    """A distributed.Client on the scheduler at `address`, or ConnectionError naming it."""
    try:
        from distributed import Client
    except ImportError:
        raise ImportError("refnorm study --scheduler needs Dask's distributed: pip install "
                          "'refnorm[cluster]'") from None
    try:
        return Client(address, timeout=timeout)
    except Exception as err:       # refused, timed out, or something else answering there
        raise ConnectionError(f"no Dask scheduler answers at {address} within {timeout} s "
                              f"({type(err).__name__}: {err})") from None


def run_on_cluster(address, specs, cfg, run, record):
    """Submit run(spec, cfg) for every spec to the scheduler at `address`; call
    record(spec, result=...) or record(spec, failed=message) as each one finishes."""
    from distributed import as_completed
    with connect(address) as client:
        futures = {client.submit(run, spec, cfg, retries=1, pure=False): spec for spec in specs}
        for future in as_completed(futures):
            spec = futures[future]
            if future.status == "finished":
                record(spec, result=future.result())
            else:
                err = future.exception()
                record(spec, failed=f"{type(err).__name__}: {err}")
            future.release()
