"""Where the benchmarks keep their figures: bench/results/NAME.json (bench/run.py reads them back)."""
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def save(name, figures):
    """Keep figures as NAME.json and print them."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


def read(name):
    return json.loads((RESULTS / f"{name}.json").read_text())
