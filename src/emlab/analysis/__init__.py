"""Analysis: statistics with honest uncertainty, paper-style figures and the HTML report."""
