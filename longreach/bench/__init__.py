"""The benchmark harness: task generators and scorers, the sweep runner, results and reports."""
