"""Schedules of the models in scope (see ``fastrecur.core.schedule``): the recursion is data."""

from fastrecur.core.schedule import INPUT, Copy, Schedule, Update


def trm_schedule(H_cycles: int, L_cycles: int, grad_cycles: int = 1) -> Schedule:
    """TRM: per H cycle, ``L_cycles x [z_L = L(z_L, z_H + x)]`` then ``z_H = L(z_H, z_L)``; the last
    ``grad_cycles`` H cycles carry gradient (reference: 1)."""
    cycle = [Update("z_L", "L_level", ("z_H", INPUT))] * L_cycles + [Update("z_H", "L_level", ("z_L",))]
    return Schedule(("z_H", "z_L"), (), tuple(cycle * H_cycles), (H_cycles - grad_cycles) * len(cycle), "z_H")


def hrm_schedule(H_cycles: int, L_cycles: int) -> Schedule:
    """HRM: per H cycle, ``L_cycles x [z_L = L(z_L, z_H + x)]`` then ``z_H = H(z_H, z_L)``; only the last
    L and H updates carry gradient (the 1-step gradient approximation)."""
    cycle = [Update("z_L", "L_level", ("z_H", INPUT))] * L_cycles + [Update("z_H", "H_level", ("z_L",))]
    steps = tuple(cycle * H_cycles)
    return Schedule(("z_H", "z_L"), (), steps, len(steps) - 2, "z_H")


def srm_schedule(H_cycles: int, L_cycles: int, skip: str = "segment", grad_cycles: int = 1) -> Schedule:
    """SRM: per segment, ``a = z`` then ``L_cycles x [z = L(z, a + x)]`` (``skip="none"``: ``z = L(z, x)``);
    the last ``grad_cycles`` segments carry gradient."""
    if skip == "segment":
        segment = [Copy("a", "z")] + [Update("z", "L_level", ("a", INPUT))] * L_cycles
        scratch = ("a",)
    else:
        segment = [Update("z", "L_level", (INPUT,))] * L_cycles
        scratch = ()
    return Schedule(("z",), scratch, tuple(segment * H_cycles), (H_cycles - grad_cycles) * len(segment), "z")


def flat_schedule(L_cycles: int, grad_cycles: int = 1) -> Schedule:
    """Flat recurrence: ``L_cycles x [z = L(z, x)]``; the last ``grad_cycles`` steps carry gradient."""
    return Schedule(("z",), (), (Update("z", "L_level", (INPUT,)),) * L_cycles, L_cycles - grad_cycles, "z")


def trm_singlez_schedule(H_cycles: int, L_cycles: int, grad_cycles: int = 1) -> Schedule:
    """TRM with one state (the TRM paper's single-z ablation): per H cycle, ``L_cycles x [z = L(z + x)]`` then
    ``z = L(z)`` with nothing injected; the last ``grad_cycles`` H cycles carry gradient (reference: 1)."""
    cycle = [Update("z_L", "L_level", (INPUT,))] * L_cycles + [Update("z_L", "L_level", ())]
    return Schedule(("z_L",), (), tuple(cycle * H_cycles), (H_cycles - grad_cycles) * len(cycle), "z_L")


HIER6_STATES = tuple(f"z_L{i}" for i in range(1, 7))
SUM_LEVEL = "sum_level"  # a level of no blocks: ``Update(t, SUM_LEVEL, (s,))`` is ``t = t + s``


def trm_hier6_schedule(H_cycles: int, L_cycles: int, grad_cycles: int = 1) -> Schedule:
    """TRM with six low-level states ``z_L1..z_L6`` (the TRM paper's hierarchy ablation). Per H cycle, L step
    ``k`` sets ``z_Lk = L(z_L1 + ... + z_L6 + z_H + x)`` (``L_cycles <= 6`` steps, so ``z_Lk`` for ``k >
    L_cycles`` keep their initial value), then ``z_H = L(z_H + z_L1 + ... + z_L6)``; the last ``grad_cycles``
    H cycles carry gradient (reference: 1).

    The additions run in the reference's order, so float results are the reference's bit for bit: the six are
    summed left to right into the scratch state ``z_sum`` (through :data:`SUM_LEVEL`, a level without blocks),
    then ``z_sum = L(z_sum + (z_H + x))`` and ``z_Lk = z_sum``.
    """
    if L_cycles > len(HIER6_STATES):
        raise ValueError(
            f"trm_hier6 updates one of its {len(HIER6_STATES)} z_L states per L cycle: L_cycles must be <= "
            f"{len(HIER6_STATES)}, got {L_cycles}"
        )
    total = [Copy("z_sum", HIER6_STATES[0])] + [Update("z_sum", SUM_LEVEL, (z,)) for z in HIER6_STATES[1:]]
    cycle = []
    for z in HIER6_STATES[:L_cycles]:
        cycle += total + [Update("z_sum", "L_level", ("z_H", INPUT)), Copy(z, "z_sum")]
    cycle.append(Update("z_H", "L_level", HIER6_STATES))
    states = ("z_H",) + HIER6_STATES
    return Schedule(states, ("z_sum",), tuple(cycle * H_cycles), (H_cycles - grad_cycles) * len(cycle), "z_H")


def single_pass_schedule(level: str = "H_level") -> Schedule:
    """No recursion inside an ACT step (the transformer baseline): ``z_H = H(z_H + x)`` once, with gradient."""
    return Schedule(("z_H",), (), (Update("z_H", level, (INPUT,)),), 0, "z_H")
