"""The mlserve CrossGuard policy pack: `rules` holds the checks, `__main__` serves them."""
