"""``cami demo`` (:mod:`api.demo.run`) and the synthetic region it sends (:mod:`api.demo.synthetic`),
which the tests and benchmarks use too. Kept out of the write path: nothing in ingest/ needs it."""
