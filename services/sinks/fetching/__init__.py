"""The fetching sink: what the sinks that fetch a URL found on an event share (the
recordings and transcripts sinks). ``settings`` declares and checks their common
settings, ``index`` the common shape of their warehouse rows, ``sink`` the batch flow
(jobs, lookup, guarded and capped fetches with bounded concurrency, outcomes)."""
