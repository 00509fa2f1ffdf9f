"""``bfcl`` mode agrees with bfcl-eval's own AST checker on every single-turn category.

Both judge the ground truth and the near misses that ``tooldistill.testing.mutations`` derives
from it (wrong function, value and type; missing and extra arguments; dropped, duplicated and
reordered parallel calls).  Ours reads the traces our BFCL reader produced; BFCL's checker reads
the package's raw entries, so the reader's schema conversion is under test too.
"""

from collections import Counter

import pytest

from tooldistill.match import compare
from tooldistill.readers.bfcl import SINGLE_TURN_CATEGORIES
from tooldistill.testing.bfcl_checker import bfcl_verdict, load_entries
from tooldistill.testing.mutations import mutations


@pytest.mark.parametrize("category", SINGLE_TURN_CATEGORIES)
def test_verdicts_agree_with_bfcl_checker(category, bfcl_traces):
    entries = load_entries(category)
    traces = [t for t in bfcl_traces if t.category == category]
    assert len(traces) == len(entries)
    verdicts = Counter()
    disagreements = []
    for trace in traces:
        functions, ground_truth = entries[trace.source_id]
        schemas = {tool.name: tool.parameters for tool in trace.tools}
        for label, calls in mutations(trace):
            ours = compare(calls, trace.reference_calls, "bfcl", schemas, trace.acceptable, trace.category)
            theirs, why = bfcl_verdict(functions, calls, ground_truth, category)
            verdicts[(label, ours.match)] += 1
            if ours.match != theirs:
                disagreements.append(
                    f"{trace.source_id} [{label}] ours={ours.match} ({ours.reason}) | bfcl={theirs} ({why})"
                )
    total = sum(verdicts.values())
    for line in disagreements:
        print(line)
    print(f"{category}: {total - len(disagreements)}/{total} agree")
    assert (total - len(disagreements)) / total >= 0.995, f"{len(disagreements)} disagreements"
    # the cases must exercise both verdicts, or agreement means nothing
    assert sum(n for (_, ok), n in verdicts.items() if ok) > len(traces) * 0.5
    if category.endswith("irrelevance"):
        assert verdicts[("call_when_none_expected", False)] > len(traces) * 0.9
    else:
        assert sum(n for (_, ok), n in verdicts.items() if not ok) > len(traces) * 5
        assert verdicts[("wrong_function", True)] == 0 and verdicts[("no_call", False)] == len(traces)
