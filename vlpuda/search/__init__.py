"""The search driver (Tuner + OptunaSearch), the Pareto maths and the command line."""
