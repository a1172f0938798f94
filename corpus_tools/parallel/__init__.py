"""Scale-out: the same per-item work on local worker processes or a Ray cluster.

No scheduler of our own. Local parallelism is a process pool (spawned processes, each
loading its models once, at most ``2 × workers`` items queued); the cluster is Ray (actors
that hold their models, one per GPU when the cluster has GPUs, CPU actors otherwise).
``--num-shards N --shard-index I`` splits a run into parts for array schedulers (SLURM);
``corpus merge`` combines them.

Every backend writes exactly what the local backend writes, through the same functions:

* segment (:mod:`.segment`) — workers fill the per-recording stage caches (atomic files);
  the driver assembles the manifests from the caches with ``assemble.write_method``;
* shard (:mod:`.shards`) — Ray tasks call ``write_shards(..., num_shards=K, shard_index=i)``
  on disjoint subsets of the one deterministic plan; the index is written from the shard markers;
* stem (:mod:`.stems`) — actors run ``stems.stem_batch`` on the very batches ``stem_clips`` would form;
* ingest — probes run as Ray tasks (:func:`.ray_utils.ray_map`); the driver journals each
  result as it arrives.

So outputs are byte-identical whichever backend ran, and every backend resumes from
whatever a killed run (of any backend) left behind. Parts of a split run are recorded and
merged by :mod:`.parts`.
"""
