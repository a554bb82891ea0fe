"""Repeated addition whose step is the digit sum of the running total, totals only: the embedded testbed where
parallel decoding is hard.

Prompt ``037+15*3=`` (start at 37, first step 15, three totals), exactly as in ``arith``; answer
``3:052,2:059,1:073#073``: after the first addition each step is the digit sum of the running total
(052 + 0+5+2 = 059, 059 + 0+5+9 = 073), and only the totals are written, each after the count of totals left.
In ``arith`` the k-th total is ``start + k * step``, so every line can be computed from the prompt alone and the
oracle finishes a block in about one forward pass. Here there is no closed form: each total needs the one before
it, through a digit sum and a carry chain, and a block of 16 tokens holds about three totals, so a forward pass
that does not see the previous total written out can only guess. Committing many digits at once is safe right
after the committed text and not beyond it, which a confidence rule cannot see and a learned policy given the
distance to the committed text can.

The prompt, countdown and alphabet are ``arith``'s, so the second embedded model starts from the first one's
weights. Two earlier versions did not make a hard testbed:
- an iterated map on single digits (``x_k = (x_{k-1}^2 + d_k) mod 10``, input digits in a fixed-width field)
  was not learned by the 1.3M-parameter model in 5,000 steps from scratch: 52% of digits right, 0% exact match;
- this chain written out as ``arith``'s lines (``2:052+07=059``, one line per block of 16) was learned (88% exact
  match after 2,000 steps) but was not hard: a block held one step of the chain, so the oracle needed 1.2
  forward passes per block of text and threshold 0.9 lost 0.7 points.
"""


from __future__ import annotations

from pipeline.tasks.arith import ChainedAddition


def digit_sum(value: int) -> int:
    return sum(int(d) for d in str(value))


class DigitSumChain(ChainedAddition):
    name = "chain"
    stream_prefix = "chain:"

    @staticmethod
    def solve(start: int, step: int, count: int) -> tuple[str, str]:
        lines, total = [], start + step
        for remaining in range(count, 0, -1):
            lines.append(f"{remaining}:{total:03d}")
            if remaining > 1:
                total += digit_sum(total)
        return ",".join(lines) + f"#{total:03d}", f"{total:03d}"
