"""The transcripts sink: fetch the transcripts providers link to (Saaya's transcriptUrl)."""
