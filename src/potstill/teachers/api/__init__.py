"""What API adapters (openai, anthropic, a third party's HTTP teacher) share: the async engine.

An adapter subclasses ``ApiTeacher`` and implements ``make_client`` (its SDK over a given httpx
client) and ``call`` (one request, raising on failure). Batches then run on the engine
(``potstill.teachers.api.engine``: concurrency, RPM/TPM limits that follow the server's headers,
a budget cap, retry counting), and single requests on one long-lived ``ApiSession``
(``potstill.teachers.api.session``).
"""

from potstill.teachers.api.engine import ApiTeacher

__all__ = ["ApiTeacher"]
