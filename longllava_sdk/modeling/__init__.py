"""Model code of the SDK: the LongLLaVA model, its config glue and the Mamba kernels."""
