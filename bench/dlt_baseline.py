"""The dlt baseline for bench.refresh, run inside bench/.venv-dlt (dlt's pins are its own).

One dlt pipeline per connection, as dlt's REST API source documentation shows: the
same sandbox endpoint, the same page_number pagination, loaded into SQLite through
dlt's sqlalchemy destination. The first WARMUP keys are run first and not reported
(imports, first-pipeline set-up); then one JSON line: wall seconds and CPU seconds
(this process, its threads and any waited-for children) per timed connection.

usage: python dlt_baseline.py BASE_URL WORKDIR WARMUP KEY [KEY ...]
"""

import json
import os
import sys
import time


def cpu_now() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def main() -> None:
    base_url, workdir, warmup, *keys = sys.argv[1:]
    warmup = int(warmup)
    os.makedirs(workdir, exist_ok=True)
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
    os.environ["DLT_DATA_DIR"] = os.path.join(workdir, "dlt-data")
    import dlt
    from dlt.sources.rest_api import rest_api_source

    timings, cpus = [], []
    for index, key in enumerate(keys):
        started, started_cpu = time.perf_counter(), cpu_now()
        source = rest_api_source(
            {
                "client": {
                    "base_url": base_url,
                    "auth": {"type": "bearer", "token": key},
                    "paginator": {
                        "type": "page_number",
                        "base_page": 1,
                        "page_param": "page",
                        "total_path": "total_pages",
                    },
                },
                "resource_defaults": {"write_disposition": "replace"},
                "resources": [
                    {
                        "name": "events",
                        "endpoint": {
                            "path": "bench/events",
                            "params": {"per_page": 100},
                            "data_selector": "data",
                        },
                    }
                ],
            }
        )
        pipeline = dlt.pipeline(
            pipeline_name=f"bench_{index}",
            pipelines_dir=os.path.join(workdir, "pipelines"),
            destination=dlt.destinations.sqlalchemy(
                credentials=f"sqlite:///{os.path.join(workdir, f'dlt_{index}.db')}"
            ),
            dataset_name="main",
        )
        pipeline.run(source)
        if index >= warmup:
            timings.append(time.perf_counter() - started)
            cpus.append(cpu_now() - started_cpu)
    print(json.dumps({"seconds": timings, "cpu_s": cpus}))


if __name__ == "__main__":
    main()
