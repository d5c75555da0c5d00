"""Rebuild ``data/sample_dialogues.json`` from the chatterbot-corpus package.

The bundled sample is the English part of chatterbot-corpus 1.3.3 (BSD licence, by Gunther Cox,
https://github.com/gunthercox/chatterbot-corpus), converted to the seed format this project
reads: a JSON array of objects whose keys are speaker names, turns alternating between "Alex"
and "Bob", speaker keys repeating inside one object. Exact duplicate conversations, and one with an empty turn,
are dropped.

Maintainers only (the project does not need this at run time):

    pip install chatterbot-corpus==1.3.3 pyyaml
    python data/build_sample_dialogues.py
"""

import json
import pathlib

import chatterbot_corpus
import yaml

SPEAKERS = ("Alex", "Bob")
OUTPUT = pathlib.Path(__file__).with_name("sample_dialogues.json")


def main() -> None:
    english = pathlib.Path(chatterbot_corpus.__file__).parent / "data" / "english"
    seen, lines = set(), []
    for path in sorted(english.glob("*.yml")):
        for conversation in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations", []):
            turns = tuple(str(turn).strip() for turn in conversation)
            if len(turns) < 2 or not all(turns) or turns in seen:  # one conversation has an empty turn
                continue
            seen.add(turns)
            # json.dumps cannot write a repeated key, so each pair is written by hand.
            pairs = (f"{json.dumps(SPEAKERS[i % 2])}: {json.dumps(t, ensure_ascii=False)}" for i, t in enumerate(turns))
            lines.append("  {" + ", ".join(pairs) + "}")
    OUTPUT.write_text("[\n" + ",\n".join(lines) + "\n]\n", encoding="utf-8")
    print(f"wrote {len(lines)} dialogues to {OUTPUT}")


if __name__ == "__main__":
    main()
