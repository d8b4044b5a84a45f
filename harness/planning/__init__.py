"""What a sweep will run: requests, plans (configs, budgets, seeds), adaptive rounds, and time
estimates."""
