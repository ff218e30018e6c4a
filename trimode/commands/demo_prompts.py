"""The fixed prompts of ``trimode demo``.

A chat model (trimode-smol, or any converted model with a chat template) gets two chat
requests, one for prose and one for code: :data:`CHAT_PROMPT`, :data:`CODE_REQUEST`.

A model trained by ``trimode train`` (``models/trimode-tiny``) gets one code prompt and
one checkable task, chosen to show what it does well:

- Code: the start of a character-mapping codec module written the way the standard
  library writes them. The model was trained on the Python standard library, where
  codec modules are the most common kind of file, so every mode continues it with
  plausible code. The prompt stops right after a ``def`` line: the tokenizer merges a
  newline with the next line's indentation, so a prompt ending in a newline would
  start the model on a token split it never saw.
- Tasks: held-out tasks (never trained on) of the families the model was trained on.
  Their items are random letter strings, as in training: the model answers by copying
  from its prompt, which it learned on such items (real words tokenize differently).
"""

from __future__ import annotations

CHAT_NAME = "chat"
CHAT_PROMPT = "Give three tips for a good night's sleep."
CODE_REQUEST_NAME = "code (asked in chat)"
CODE_REQUEST = "Write a Python function that checks whether a string is a palindrome."

CODE_NAME = "code (a stdlib-style codec module)"
CODE_PROMPT = """import codecs

### Codec APIs

class Codec(codecs.Codec):

    def encode(self,input,errors='strict'):
        return codecs.charmap_encode(input,errors,encoding_table)

    def decode(self,input,errors='strict'):"""

# family -> (prompt, exact answer): the first held-out task of each family (seed 0).
TASKS = {
    "json": ("Write a JSON object with these fields in this order, numbers as JSON numbers and everything else as "
             "strings: xjwpz=sbrxncf; mjeh=6583; dfxen=9129; hbw=1721; ghto=9032; bvo=yhwwsdb; womkzy=9914; "
             "bnthwop=2427",
             '{"xjwpz": "sbrxncf", "mjeh": 6583, "dfxen": 9129, "hbw": 1721, "ghto": 9032, "bvo": "yhwwsdb", '
             '"womkzy": 9914, "bnthwop": 2427}'),
    "enumerate": ("Number these items one per line, starting at 11: 994, 486, 57, 61, 268, 382, 604, 797, 236, 290, "
                  "861, 464, 609",
                  "11. 994\n12. 486\n13. 57\n14. 61\n15. 268\n16. 382\n17. 604\n18. 797\n19. 236\n20. 290\n21. 861\n"
                  "22. 464\n23. 609"),
    "repeat": ("Repeat this list exactly: uonbno, sxbbip, nxea, vckqej, xjuxi, onrgio, fqfrm, npkhfb, bacn, iqq, wovwr",
               "uonbno, sxbbip, nxea, vckqej, xjuxi, onrgio, fqfrm, npkhfb, bacn, iqq, wovwr"),
}


def demo_task(families: list[str] | None):
    """The demo's task: the shipped one of the first of ``families`` (the model's trained
    families) that has one; else a held-out task of the first family; ``json`` if unknown."""
    from ..data.tasks import Task, generate_tasks

    families = families or ["json"]
    for family in families:
        if family in TASKS:
            prompt, answer = TASKS[family]
            return Task(family=family, prompt=prompt, answer=answer, id=f"demo-{family}")
    return generate_tasks("heldout", 1, seed=0, families=families[:1])[0]
