"""``python -m medvit`` (also what ``torchrun -m medvit ...`` runs)."""

from medvit.cli import app

if __name__ == "__main__":
    app(prog_name="medvit")
