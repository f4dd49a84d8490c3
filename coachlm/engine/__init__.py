"""The one training engine: `accel.Engine` (device, precision, processes, over accelerate),
`loop.train` / `loop.update` (the loop every trainer steps through), `checkpoint` (exact resume)
and `config.TrainConfig`, `shard` (non-training work split over processes: evaluation decoding). The only part of the package that imports accelerate or a distributed
backend; import its modules directly."""
