"""Feedback analytics: weekly statistics, segments, note terms and A/B comparisons."""
