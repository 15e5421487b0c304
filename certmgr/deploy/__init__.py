"""The deployment pipeline: pure core (backoff, states, profiles, verdict), database service, reconcile,
the live hub shared with the WPI listener, and the dispatcher background task."""
