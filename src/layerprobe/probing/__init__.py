"""Stage 3, the probes: a linear head trained on one layer's stored tokens (`probe`, `settings`),
scored by mmseg's mIoU (`metrics`) with bootstrap intervals over images (`intervals`), logits
upsampled to the labels (`upsample`) and, for the pad geometry, whole images (`wholeimage`)."""
