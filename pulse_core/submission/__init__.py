"""The submit use case: a job body in, an admitted (and published) job out; and the message a
parked job is sent again with (``parked``)."""
