"""What a step sends: the meter that counts the bytes handed to each collective (`meter.py`), the taps that
let it see them under DDP, FSDP and DeepSpeed (`taps.py`), and what the model says they must be
(`expected.py`). Engines attach them; models never see them."""
