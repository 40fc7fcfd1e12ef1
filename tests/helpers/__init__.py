"""What test modules import: tiny cities (``city``), running the project as a user does
(``runs``), small models and checkpoints (``models``), web helpers (``web``), stand-ins for
the model hub (``hf_stand_ins``), a fake chat server (``chat_server``), a fake hub that
huggingface_hub talks to (``fake_hub``) with tiny releases and official-format checkpoints to
serve (``releases``), and a plain restatement of the protocol (``reference_protocol``).
Fixtures stay in ``conftest.py``."""
