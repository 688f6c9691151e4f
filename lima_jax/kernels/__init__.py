"""Kernels the model layer computes with (training's fused attention); they import no stage."""
