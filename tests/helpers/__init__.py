"""What test modules import: tiny cities (``city``), running the project as a user does
(``runs``), small models and checkpoints (``models``), web helpers (``web``), stand-ins for
the model hub (``hf_stand_ins``), a fake chat server (``chat_server``) and a plain
restatement of the protocol (``reference_protocol``). Fixtures stay in ``conftest.py``."""
