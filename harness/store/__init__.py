"""The run record and the results store: what one run is, its rows and journal, saved plans, and
where commands may write."""
