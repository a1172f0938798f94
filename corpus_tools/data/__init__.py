"""The data path of training and ``corpus simulate``: WebDataset tar shards in, batches of
seconds of audio out.

* ``tar_index`` finds shards and reads one shard's index (tar headers and json, audio left on disk);
* ``members`` reads and decodes the audio inside shards;
* ``batching`` groups utterances by duration (``DurationBatcher``, ``duration_batches``);
* ``consumers`` shares the shards out over DDP ranks × DataLoader workers;
* ``stream`` is the pipeline (``ShardBatchStream``, ``make_loader``) yielding ``batch.Batch``;
* ``rng`` holds the stream's random generators.

Nothing is imported here, so that ``corpus_tools.data.rng`` or ``tar_index`` load without torch.
"""
