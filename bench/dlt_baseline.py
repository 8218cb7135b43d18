"""The dlt baseline for bench.refresh, run inside bench/.venv-dlt (dlt's pins are its own).

One dlt pipeline per connection, as dlt's REST API source documentation shows: the
same sandbox endpoint, the same page_number pagination, loaded into SQLite through
dlt's sqlalchemy destination. Prints one JSON line: seconds per connection.

usage: python dlt_baseline.py BASE_URL WORKDIR KEY [KEY ...]
"""

import json
import os
import sys
import time


def main() -> None:
    base_url, workdir, *keys = sys.argv[1:]
    os.makedirs(workdir, exist_ok=True)
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
    os.environ["DLT_DATA_DIR"] = os.path.join(workdir, "dlt-data")
    import dlt
    from dlt.sources.rest_api import rest_api_source

    timings = []
    for index, key in enumerate(keys):
        started = time.perf_counter()
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
        timings.append(time.perf_counter() - started)
    print(json.dumps({"seconds": timings}))


if __name__ == "__main__":
    main()
