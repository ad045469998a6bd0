"""`stamp chat IMAGE [--out DIR]`: a conversation about one image in the terminal, several turns with
their history, as LISA's chat.py. Each line read is a turn; its answer is printed, and its masks and
overlay are written to --out/turn_<n>/ (`stamp.outputs.write_result`), the conversation so far to
--out/conversation.json. Lines starting with / are commands:

    /image PATH    talk about another image (the history starts again)
    /reset         forget the history, keep the image
    /quit, /exit   end (as does Ctrl-D, or the end of a piped input)

It reads a piped standard input as well as a terminal (`printf 'Segment the circle.\\n' | stamp chat
scene.png`); the `you>` prompt is shown only on a terminal.
"""

from __future__ import annotations

import sys
from pathlib import Path

from stamp.cli.args import (
    add_command,
    add_generation_args,
    add_model_args,
    add_output_args,
    add_predictor_args,
    from_args,
)
from stamp.cli.common import build_predictor, check_out_dir, warn_unfinished

EXAMPLES = """examples:
  stamp chat scene.png                               # then type; /image other.png, /reset, /quit or Ctrl-D
  stamp chat scene.png --out talk/ --force           # talk/turn_001/, ..., talk/conversation.json
  printf 'How many shapes are there?\\nSegment the red square.\\n' | stamp chat scene.png"""
HELP = "commands: /image PATH (another image; the history starts again), /reset (forget the history), /quit"


def add_parser(sub):
    p = add_command(
        sub,
        "chat",
        "talk about an image turn by turn (history kept); masks and overlays written per turn",
        EXAMPLES,
    )
    p.add_argument("image", metavar="IMAGE", help="the image to talk about (/image PATH switches)")
    add_model_args(p)
    add_predictor_args(p)
    add_generation_args(p)
    add_output_args(
        p, "folder of the turns' results (turn_<n>/) and conversation.json", default="stamp_out/chat"
    )
    return p


class Chat:
    """The conversation: the predictor, its current image, the history, and where the turns go."""

    def __init__(self, predictor, args) -> None:
        self.predictor, self.args = predictor, args
        self.out, self.force = Path(args.out), args.force
        self.generation = from_args(_generation_config(), args)
        self.history: list[tuple[str, str]] = []
        self.turns: list[dict] = []
        self.image = self.image_path = None

    def set_image(self, path: str) -> None:
        from stamp.imaging import load_image

        image = load_image(path, self.args.max_image_pixels)
        self.predictor.set_image(image)
        self.image, self.image_path, self.history = image, path, []
        print(f"image {path} ({image.size[0]}x{image.size[1]})")

    def turn(self, prompt: str) -> None:
        from stamp.outputs import write_result
        from stamp.outputs.files import write_json

        result = self.predictor.chat(prompt, self.history, generation=self.generation)
        n = len(self.turns) + 1
        folder = self.out / f"turn_{n:03d}"
        write_result(
            result,
            self.image,
            folder,
            force=self.force,
            extra={"turn": n, "image": self.image_path, "prompt": prompt, "history": self.history},
        )
        self.history = [*self.history, ("user", prompt), ("assistant", result.text)]
        self.turns.append({"turn": n, "image": self.image_path, "prompt": prompt, "answer": result.text})
        write_json(self.out / "conversation.json", {"turns": self.turns})
        print(f"stamp> {result.text}")
        for k, m in enumerate(result.masks):
            print(f"  mask {k}: area {m.area} px, bbox {m.bbox}")
        print(f"  wrote {folder}/")
        warn_unfinished(f"turn {n}", result)


def _generation_config():
    from stamp.inference.options import GenerationConfig

    return GenerationConfig


def run(args) -> int:
    from stamp.cli.common import USER_ERRORS
    from stamp.imaging import load_image

    out = Path(args.out)
    check_out_dir(out)  # before the model loads: the folder, then the image
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise FileExistsError(f"{out} holds an earlier conversation; use --force to replace its turns")
    load_image(args.image, args.max_image_pixels)
    out.mkdir(parents=True, exist_ok=True)
    chat = Chat(build_predictor(args), args)
    chat.set_image(args.image)
    interactive = sys.stdin.isatty()
    if interactive:
        print(HELP)
    while True:
        try:
            line = input("you> " if interactive else "").strip()
        except EOFError:
            break
        if not line:
            continue
        command, _, rest = line.partition(" ")
        try:
            if command in ("/quit", "/exit"):
                break
            elif command == "/image":
                chat.set_image(rest.strip())
            elif command == "/reset":
                chat.history = []
                print("history cleared")
            elif command.startswith("/"):
                print(f"stamp chat: unknown command {command}; {HELP}", file=sys.stderr)
            else:
                chat.turn(line)
        except USER_ERRORS as exc:  # a bad path or request: said, and the conversation goes on
            print(f"stamp chat: error: {exc}", file=sys.stderr)
    if interactive:
        print()
    print(f"{len(chat.turns)} turn(s) written to {out}/")
    return 0
