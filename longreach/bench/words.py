"""Word and name lists for keys, distractors and fictional facts (written for longreach; no model has
seen these facts, so a right answer can only come from the context)."""

from __future__ import annotations

NOUNS = """
apple anchor arrow badge bakery balloon banner barrel basket beacon bell bicycle blanket boat bottle
bridge bucket button cabin camera candle canyon carpet castle cellar chair chimney circle cliff clock
cloud compass corner cottage crayon crown curtain desert diamond dolphin door dragon drum eagle engine
falcon feather fence fiddle forest fountain garden gate glacier globe guitar hammer harbor helmet
hill honey horizon island jacket jungle kettle key kite ladder lagoon lantern lemon library lighthouse
lizard magnet maple marble meadow mirror monkey mountain needle nest ocean orchard otter oven owl paddle
palace panther parrot pebble pencil pepper piano pillow pirate planet pocket pond puzzle quarry rabbit
railway raven ribbon river robot rocket saddle sailor scarf shadow shell shovel signal silver skate
sparrow spider spoon stable statue storm stream subway summit sundial teapot temple tiger tower tractor
trumpet tunnel turtle umbrella valley velvet violin volcano wagon walnut whistle window wizard yacht
zebra almond basil cedar clover copper cotton dune ember fern flint galaxy granite hazel iris ivory
jasmine juniper kelp lava linen meteor moss nectar opal orbit pearl prism quartz reef saffron thistle
""".split()

ADJECTIVES = """
ancient bitter bold brave bright calm clever cold crimson curious dark deep distant dusty eager early
empty fancy fierce gentle giant golden grand green hidden hollow humble icy jolly kind large lively
lonely loud lucky mighty misty modern narrow noble odd pale patient polite proud quick quiet rapid
rare rough round royal rusty salty secret shiny silent simple sleepy slow smooth soft solid spicy
steady stormy strange sturdy sunny swift tall tender tiny vast velvet warm wild wise wooden young
""".split()

# Invented given names (short, distinct, mostly single-token-friendly) for kinship chains.
NAMES = """
Abel Adira Alaric Amara Anselm Ardith Arlo Aurelia Bastian Beatrix Benedek Berit Boris Brisa Caius
Calla Cassius Celeste Cyrus Dalia Dario Delphine Dorian Edda Elio Elowen Emrys Esme Evander Fenna
Florian Freya Gideon Greta Hadrian Halona Idris Ilse Ines Isolde Ivo Jasper Jora Jovan Kasimir Kaya
Keziah Lars Leandra Levin Linnea Lorcan Lucia Magnus Malin Marek Mila Nadir Nerys Niko Noor Odile
Orla Osric Pavla Perrin Quillon Quinta Rafe Rhiannon Rosalind Ruslan Saskia Silas Solveig Stellan
Talia Tamsin Thaddeus Thora Ulric Una Valen Vesna Wendel Wilda Xanthe Yara Yorick Zelda Zoran Zuri
Aldous Brenna Corwin Dagny Eamon Fiora Gaspard Hesper Ingmar Junia Kestrel Liesel Mordecai Nell
""".split()

# Fictional places and objects for NeedleBench-style retrieval needles.
PLACES = """
Velmora Quillhaven Tarnwick Oskaria Brenmoor Caldris Dunmere Elsgarth Fenwald Glimmerfell Harrowgate
Isenvale Jorvath Kelbrook Lunaris Mirefield Northmarch Orrin Pellucid Quarrow Rosthaven Silverkeep
Thornby Umberlee Valdren Westerhold Yarrowdale Zephyria Ashcombe Brightwater
""".split()

OBJECTS = """
lantern compass teapot violin atlas hourglass telescope music-box quill chessboard mirror kite
harp globe sundial locket spyglass abacus candlestick tapestry
""".split()

COLORS = "amber azure crimson emerald indigo ivory jade lilac ochre scarlet teal violet".split()
