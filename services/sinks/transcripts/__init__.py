"""The transcripts sink: fetch the transcripts providers link to (``transcript_url``)."""
