"""Layer 3, reporting: typed results and the files of a run folder, bench tables and the HTML report, all from saved files."""
