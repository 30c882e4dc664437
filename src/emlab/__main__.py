from emlab.cli import app

app(prog_name="emlab")
