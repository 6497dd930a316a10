"""Recurrent layers on packed batches: the engine's own forward for Gated DeltaNet, Mamba-2 and short convolutions.

transformers' recurrent layers keep one state per batch row in their own cache, but the engine's packed
row holds many sequences. At load (engine.loader) every recurrent mixer module gets the engine's forward
(`mixers`): it reads the module's weights as transformers loaded them, runs each sequence's causal
convolution (`conv`) and recurrence (`gated_delta_net`, `mamba2`, `short_conv`) from that sequence's
state slot, and writes the new states back (`scan`); the step's sequence boundaries, slots and
prefill/decode split come in `RecurrentMetadata` (`metadata`), beside the attention metadata.

The math of one sequence is transformers' own torch reference (the model module's chunked and one-step
functions), so a batch computes what generate() computes for each prompt alone. Outside the engine's
steps (generate(), embeddings, the load-time probe) the module's own forward runs.
"""
