"""The attack x defence tables of `scripts.attack_eval`: the defences and
what each leaves an attacker, the FedAvg setup every table trains, one
module per attack, and the Markdown / CSV / PNG reports."""
