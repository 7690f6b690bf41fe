"""What the train stage uses: devices, torchrun, checkpoints, the DVCLive callback and the model card."""
