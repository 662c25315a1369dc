"""The LIT decoder: its folders (:mod:`.folder`), its prompt (:mod:`.prompt`), its inputs
(:mod:`.inputs`), its answer loss (:mod:`.loss`), prompts that share a read packed
into prefix trees (:mod:`.packing`) and generation batches whose shared opening runs once
(:mod:`.header_cache`)."""
