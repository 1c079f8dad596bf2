pytest_plugins = ["tests.environment"]
