"""Process groups, data-parallel wrapping and job-wide error handling."""
