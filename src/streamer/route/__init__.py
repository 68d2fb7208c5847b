"""The synchronous core of a stream: samples (and VAD probabilities) in, work out.

A route holds every per-stream decision between decoded audio and the model: resampling
to the work rate, cutting chunks or segments, which inferences to run and which to
withdraw, what to tell the client. It awaits nothing and calls nothing back; the pipeline
carries out its work against the shared engines, as the connection driver carries out the
connection machine's actions.
"""
