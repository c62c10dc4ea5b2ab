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
