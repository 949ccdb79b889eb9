"""The numerical solvers the methods share: CHITA's Fisher problem and IHT solver, and the per-layer
reconstruction solvers (CHITA per layer, OBS sweep, Wanda)."""
