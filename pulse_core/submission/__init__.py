"""The submit use case: a job body in, an admitted (and published) job out."""
