"""Assemble docs/RESULTS.md from the per-topic files in docs/results/ (each written by its experiment's command).

    python docs/build_results.py
"""
import pathlib
import re

ORDER = ["hf_import", "data", "ocr", "textrich", "trainer", "commit", "ntk_attention", "peft", "tensor_attention", "dp_ntk",
         "dp_cross_attention", "toffee"]
HEADER = """# jaxmm results

Every table below was measured by the command printed beside it; rerunning that command regenerates it.
Unless a section names a GPU, numbers come from the 2-core CPU development machine, often while other jobs
shared it, so absolute times are noisy: only ratios measured in the same run are meant to be compared.
Details that reconstruct something a paper does not publish are marked **[reconstruction]**.
No GPU was lent to the sessions that produced these numbers: the GPU benchmark scripts in `bench/` are ready
to run and their numbers will be added here with the card's name.

"""


def main():
    root = pathlib.Path(__file__).parent
    parts = {p.stem: p for p in (root / "results").glob("*.md")}
    names = [n for n in ORDER if n in parts] + sorted(set(parts) - set(ORDER))
    body = []
    for n in names:
        text = parts[n].read_text().strip()
        # images are referenced relative to docs/results/; RESULTS.md sits one level up
        text = re.sub(r"\]\((?!https?:|#|/|results/)(?:\./)?", "](results/", text)
        body.append(text)
    (root / "RESULTS.md").write_text(HEADER + "\n\n---\n\n".join(body) + "\n")
    print(f"wrote {root / 'RESULTS.md'} from {len(names)} sections: {', '.join(names)}")


if __name__ == "__main__":
    main()
