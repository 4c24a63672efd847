"""Retrieval mechanisms for the ``rag`` reader: sentence-aligned chunks with overlap (:mod:`.chunks`),
Okapi BM25 (Lucene variant) streamed into on-disk shards and scored from memory maps (:mod:`.bm25`,
checked against ``bm25s``), dense embeddings from a Hugging Face encoder folder (:mod:`.embed`, the
packaged all-MiniLM-L6-v2 by default), reciprocal rank fusion (:mod:`.fuse`) and the on-disk index of a
document or corpus, cached by content hash, with chunk vectors computed on demand (:mod:`.index`).

Nothing here touches the language model: the reader (:mod:`longreach.readers.rag`) packs what these
modules retrieve into the model's window. See docs/rag.md.
"""
